// The latency page's charts, drawn with the shipped Chart.js from the JSON the page's tables come from.
(function () {
  "use strict";

  var COLORS = ["#417690", "#e6a23c", "#c0392b", "#6c3483", "#27ae60", "#7f8c8d", "#2c3e50", "#d35400", "#16a085"];

  function color(i) { return COLORS[i % COLORS.length]; }

  function common(yTitle, stacked) {
    return {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,  // drawn once, at once: what a screenshot or a reader sees is the final chart
      interaction: { mode: "index", intersect: false },
      scales: {
        x: { stacked: !!stacked },
        y: { beginAtZero: true, stacked: !!stacked, title: { display: true, text: yTitle } }
      }
    };
  }

  function seriesChart(canvas, data) {
    var series = data.series.filter(function (s) { return s.key === canvas.dataset.series; })[0];
    if (!series) return;
    var datasets = data.percentiles.map(function (p, i) {
      return {
        label: p,
        data: series.buckets.map(function (b) { return b[p]; }),  // null where the bucket has no turns: no point
        borderColor: color(i), backgroundColor: color(i), spanGaps: true, pointRadius: 3
      };
    });
    new window.Chart(canvas, { type: "line", data: { labels: data.labels, datasets: datasets }, options: common("ms") });
  }

  function partsChart(canvas, data) {
    var parts = data.parts.filter(function (part) { return part.measured && part.count; });
    var datasets = data.percentiles.map(function (p, i) {
      return { label: p, data: parts.map(function (part) { return part[p]; }), backgroundColor: color(i) };
    });
    var labels = parts.map(function (part) { return part.title.split(" (")[0]; });
    new window.Chart(canvas, { type: "bar", data: { labels: labels, datasets: datasets }, options: common("ms") });
  }

  function outcomesChart(canvas, data) {
    var outcomes = data.outcomes;
    var datasets = outcomes.outcomes.map(function (outcome, i) {
      return { label: outcome, data: outcomes.rows.map(function (row) { return row.counts[i]; }), backgroundColor: color(i) };
    });
    var labels = outcomes.rows.map(function (row) { return row.label; });
    new window.Chart(canvas, { type: "bar", data: { labels: labels, datasets: datasets }, options: common("calls", true) });
  }

  function draw() {
    var source = document.getElementById("latency-data");
    if (!source || !window.Chart) return;
    var data = JSON.parse(source.textContent);
    var kinds = { series: seriesChart, parts: partsChart, outcomes: outcomesChart };
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var draw = kinds[canvas.dataset.chart];
      if (draw) draw(canvas, data);
    });
    document.body.dataset.chartsDrawn = "true";
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();

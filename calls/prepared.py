"""Model queries compiled once per database and run again with a new parameter: the reads every speaking job makes."""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators
from django.db.models.sql import UpdateQuery
from django.db.models.sql.constants import MULTI


class PreparedQuery:
    """`build(mark)` gives the queryset, with `mark` where the parameter goes (it must occur once).

    Building and compiling a query with joins and subqueries costs the ORM more than running it;
    here that happens once per database. Rows become model instances as a QuerySet makes them
    (select_related objects and annotations included).
    """

    def __init__(self, build: Callable[[Any], QuerySet], mark: Any) -> None:
        self.build = build
        self.mark = mark
        self._compiled: dict[str, tuple[Any, str, list, int]] = {}
        self._lock = threading.Lock()

    def _compile(self, alias: str):
        compiled = self._compiled.get(alias)
        if compiled is None:
            with self._lock:
                queryset = self.build(self.mark).using(alias)
                compiler = queryset.query.get_compiler(using=alias)
                sql, params = compiler.as_sql()
                params = list(params)
                if params.count(self.mark) != 1:
                    raise ValueError("the mark must occur exactly once among the query's parameters")
                compiled = (compiler, sql, params, params.index(self.mark))
                self._compiled[alias] = compiled
        return compiled

    def all(self, value: Any, *, using: str = "default") -> list[Model]:
        compiler, sql, params, slot = self._compile(using)
        run = copy.copy(compiler)  # this thread's connection; the compiled select stays shared
        run.connection = connections[using]
        values = [*params[:slot], value, *params[slot + 1:]]
        run.as_sql = lambda *args, **kwargs: (sql, values)
        results = run.execute_sql(MULTI)
        select, klass_info, annotations = run.select, run.klass_info, run.annotation_col_map
        model = klass_info["model"]
        start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
        names = [column[0].target.attname for column in select[start:end]]
        populators = get_related_populators(klass_info, select, using)
        found = []
        for row in run.results_iter(results):
            obj = model.from_db(using, names, row[start:end])
            for populator in populators:
                populator.populate(row, obj)
            for name, position in (annotations or {}).items():
                setattr(obj, name, row[position])
            found.append(obj)
        return found

    def first(self, value: Any, *, using: str = "default") -> Model | None:
        found = self.all(value, using=using)
        return found[0] if found else None


class _Marked:
    """A statement compiled once per database from marked values; each run puts its own values in."""

    def __init__(self, build: Callable[..., Any], marks: dict[str, Any], fields: dict[str, Any]) -> None:
        self.build = build
        self.marks = marks
        self.fields = fields  # the model field each mark's value is prepared as
        self._compiled: dict[str, tuple[str, list, dict[str, list[int]]]] = {}
        self._lock = threading.Lock()

    def _prepare(self, name: str, value: Any, connection) -> Any:
        return self.fields[name].get_db_prep_value(value, connection, prepared=False)

    def _sql(self, alias: str) -> tuple[str, list]:
        raise NotImplementedError

    def _statement(self, using: str, values: dict[str, Any]) -> tuple[str, list]:
        compiled = self._compiled.get(using)
        if compiled is None:
            with self._lock:
                connection = connections[using]
                sql, params = self._sql(using)
                params = list(params)
                slots = {}
                for name, mark in self.marks.items():
                    prepared = self._prepare(name, mark, connection)
                    slots[name] = [index for index, param in enumerate(params) if param == prepared]
                    if not slots[name]:
                        raise ValueError(f"mark {name} is not among the query's parameters")
                compiled = (sql, params, slots)
                self._compiled[using] = compiled
        sql, params, slots = compiled
        connection = connections[using]
        params = list(params)
        for name, indexes in slots.items():
            value = self._prepare(name, values[name], connection)
            for index in indexes:
                params[index] = value
        return sql, params


class PreparedRows(_Marked):
    """`build(**marks)` gives a values_list queryset of plain text columns; `rows(**values)` runs it."""

    def _sql(self, alias: str) -> tuple[str, list]:
        return self.build(**self.marks).query.get_compiler(alias).as_sql()

    def rows(self, *, using: str = "default", **values: Any) -> list[tuple]:
        sql, params = self._statement(using, values)
        with connections[using].cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()


class PreparedUpdate(_Marked):
    """`build(**marks)` gives the queryset and the column values to set; `run(**values)` updates."""

    def _sql(self, alias: str) -> tuple[str, list]:
        queryset, values = self.build(**self.marks)
        query = queryset.query.chain(UpdateQuery)
        query.add_update_values(values)
        return query.get_compiler(alias).as_sql()

    def run(self, *, using: str = "default", **values: Any) -> int:
        """The number of rows updated."""
        sql, params = self._statement(using, values)
        with connections[using].cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount

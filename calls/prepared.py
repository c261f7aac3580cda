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


class PreparedUpdate:
    """An UPDATE compiled once per database; `run(**values)` fills in its marked parameters.

    `build(**marks)` gives the queryset and the column values to set, with each mark where its
    parameter goes; `fields[name]` is the model field a mark's value is prepared as (every mark
    must come out as one distinct parameter).
    """

    def __init__(self, build: Callable[..., tuple[QuerySet, dict[str, Any]]], marks: dict[str, Any],
                 fields: dict[str, Any]) -> None:
        self.build = build
        self.marks = marks
        self.fields = fields
        self._compiled: dict[str, tuple[str, list, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def _prepare(self, name: str, value: Any, connection) -> Any:
        return self.fields[name].get_db_prep_value(value, connection, prepared=False)

    def _compile(self, alias: str):
        compiled = self._compiled.get(alias)
        if compiled is None:
            with self._lock:
                connection = connections[alias]
                queryset, values = self.build(**self.marks)
                query = queryset.query.chain(UpdateQuery)
                query.add_update_values(values)
                sql, params = query.get_compiler(alias).as_sql()
                params = list(params)
                slots = {}
                for name, mark in self.marks.items():
                    prepared = self._prepare(name, mark, connection)
                    if params.count(prepared) != 1:
                        raise ValueError(f"mark {name} must occur exactly once among the query's parameters")
                    slots[name] = params.index(prepared)
                compiled = (sql, params, slots)
                self._compiled[alias] = compiled
        return compiled

    def run(self, *, using: str = "default", **values: Any) -> int:
        """The number of rows updated."""
        sql, params, slots = self._compile(using)
        connection = connections[using]
        params = list(params)
        for name, slot in slots.items():
            params[slot] = self._prepare(name, values[name], connection)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount

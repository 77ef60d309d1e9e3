"""Plugin manager: entry-point loading, registration and the plugin list."""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import _hooks
from ._api import MatrixSource, Solver

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ldbench"
DISABLE_ENV = "LDBENCH_DISABLE_PLUGINS"
NO_AUTOLOAD_ENV = "LDBENCH_DISABLE_PLUGIN_AUTOLOAD"


class PluginError(RuntimeError):
    """A plugin failed to load or register, in strict mode."""


@dataclass
class PluginStatus:
    """Load status of one plugin, as ``ldbench plugins`` lists it."""

    name: str
    distribution: str
    version: str
    status: str = "ok"
    error: str = ""
    sources: list[str] = field(default_factory=list)
    solvers: list[str] = field(default_factory=list)


@dataclass
class Registration:
    """A registered source or solver class and the plugin that provided it."""

    cls: type
    plugin: str
    distribution: str
    version: str


class Registry:
    """Plugin manager with the sources and solvers its plugins registered.

    Parameters
    ----------
    disabled
        Plugin (entry-point) names not to load, added to the comma-separated
        names in the ``LDBENCH_DISABLE_PLUGINS`` environment variable.
    autoload
        Load plugins from entry points; ``False`` or a set
        ``LDBENCH_DISABLE_PLUGIN_AUTOLOAD`` loads only ``extra_plugins``.
    extra_plugins
        Plugin objects (modules) to register directly, by name.
    strict
        Raise :class:`PluginError` on the first broken plugin instead of
        listing it as broken.
    """

    def __init__(
        self,
        disabled: set[str] | None = None,
        autoload: bool = True,
        extra_plugins: dict[str, Any] | None = None,
        strict: bool = False,
    ) -> None:
        self.pm = pluggy.PluginManager(_hooks.PROJECT)
        self.pm.add_hookspecs(_hooks)
        self.strict = strict
        self.plugins: dict[str, PluginStatus] = {}
        self.sources: dict[str, Registration] = {}
        self.solvers: dict[str, Registration] = {}
        env_disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",")}
        self.disabled = (disabled or set()) | {n for n in env_disabled if n}
        if os.environ.get(NO_AUTOLOAD_ENV):
            autoload = False
        if autoload:
            self._load_entry_points()
            unknown = self.disabled - set(self.plugins)
            if unknown:
                logger.warning("cannot disable unknown plugins %s; installed: %s",
                               sorted(unknown), ", ".join(sorted(self.plugins)))
        for name, plugin in (extra_plugins or {}).items():
            self._register_plugin(name, plugin, PluginStatus(name, "(direct)", ""))
        self._collect("ldbench_register_sources", MatrixSource, self.sources, "sources")
        self._collect("ldbench_register_solvers", Solver, self.solvers, "solvers")

    def _fail(self, status: PluginStatus, message: str) -> None:
        status.status = "broken"
        status.error = message
        logger.warning("plugin %r is broken: %s", status.name, message.strip())
        if self.strict:
            raise PluginError(f"plugin {status.name!r} is broken: {message}")

    def _load_entry_points(self) -> None:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist
            status = PluginStatus(
                name=ep.name,
                distribution=dist.metadata["Name"] if dist is not None else "",
                version=dist.version if dist is not None else "",
            )
            if ep.name in self.disabled:
                status.status = "disabled"
                self.plugins[ep.name] = status
                continue
            if ep.name in self.plugins:
                self._fail(status, f"entry point name {ep.name!r} is used twice")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not stop the others
                self.plugins[ep.name] = status
                self._fail(status, _format_exception(exc))
                continue
            self._register_plugin(ep.name, plugin, status)

    def _register_plugin(self, name: str, plugin: Any, status: PluginStatus) -> None:
        self.plugins[name] = status
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            self._fail(status, _format_exception(exc))

    def _collect(
        self, hook: str, base: type, table: dict[str, Registration], kind: str
    ) -> None:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            status = self.plugins[impl.plugin_name]
            if status.status != "ok":
                continue

            def register(cls: type, _status: PluginStatus = status) -> None:
                self._add(cls, base, table, kind, _status)

            try:
                impl.function(register=register)
            except Exception as exc:
                self._fail(status, _format_exception(exc))

    def _add(
        self,
        cls: type,
        base: type,
        table: dict[str, Registration],
        kind: str,
        status: PluginStatus,
    ) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"{cls!r} is not a subclass of ldbench.{base.__name__}")
        name = getattr(cls, "name", "")
        if not name:
            raise ValueError(f"{cls.__qualname__} has an empty 'name' attribute")
        if name in table:
            other = table[name]
            raise ValueError(
                f"{kind[:-1]} name {name!r} is already registered by plugin "
                f"{other.plugin!r} ({other.distribution}); choose another name"
            )
        table[name] = Registration(cls, status.name, status.distribution, status.version)
        getattr(status, kind).append(name)

    def source_class(self, name: str) -> type[MatrixSource]:
        """Return the source class registered under ``name``."""
        return self._lookup(name, self.sources, "source")

    def solver_class(self, name: str) -> type[Solver]:
        """Return the solver class registered under ``name``."""
        return self._lookup(name, self.solvers, "solver")

    def _lookup(self, name: str, table: dict[str, Registration], kind: str) -> Any:
        if name in table:
            return table[name].cls
        import difflib

        near = difflib.get_close_matches(name, list(table), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        broken = [p.name for p in self.plugins.values() if p.status == "broken"]
        extra = f" Broken plugins: {', '.join(broken)}." if broken else ""
        raise KeyError(
            f"unknown {kind} {name!r}{hint} (registered: "
            f"{', '.join(sorted(table)) or 'none'}).{extra} Run 'ldbench plugins' "
            "to see what is installed."
        )


def _format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def format_traceback(exc: BaseException) -> str:
    """Return the full traceback of ``exc`` as text."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

"""Cameras: one interface (base.py) and one module per back-end, each declaring itself with a module-level
``BACKEND = Backend(name, options, make, rank)``. The registry, the ``[camera]`` section of the config
(``CameraConfig``) and ``make_camera`` are all built from those declarations, so a new back-end is one new
module here (plus its translations). A module's heavy library (picamera2) is imported only when it opens.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from typing import get_type_hints

from device.camera.base import Backend, Camera
from device.schema import N_, setting

# modules beside the back-ends that are no back-end
_NOT_BACKENDS = {"base", "supervised"}


def _discover(package: str, path) -> dict[str, Backend]:
    found: dict[str, Backend] = {}
    for info in pkgutil.iter_modules(path):
        if info.name in _NOT_BACKENDS or info.name.startswith("_"):
            continue
        backend = getattr(importlib.import_module(f"{package}.{info.name}"), "BACKEND", None)
        if not isinstance(backend, Backend):
            continue
        if backend.name in found:
            raise RuntimeError(f"two camera back-ends are named {backend.name!r}")
        found[backend.name] = backend
    return dict(sorted(found.items(), key=lambda kv: (kv[1].rank, kv[0])))


@functools.cache
def backends() -> dict[str, Backend]:
    """Every back-end of this package by name, the default first."""
    return _discover(__name__, __path__)


def _choices(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def config_class(registry: dict[str, Backend]) -> type:
    """The ``[camera]`` section: ``backend`` (one of the registered names: which back-end opens), each
    back-end's own keys as it declares them, and the pixel size every back-end shares. Every back-end's keys
    stay accepted and checked whichever is chosen (the page and today's files carry them all)."""
    names = tuple(registry)
    spec = [("backend", str, setting(names[0], choices=names, label=N_("Camera")))]
    owner: dict[str, str] = {}
    for b in registry.values():
        hints = get_type_hints(b.options)
        for f in dataclasses.fields(b.options):
            if f.name in owner or f.name in ("backend", "um_per_pixel"):
                raise RuntimeError(f"camera back-ends {owner.get(f.name, 'camera')!r} and {b.name!r} both declare "
                                   f"[camera] {f.name}")
            owner[f.name] = b.name
            kept = dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)
            spec.append((f.name, hints[f.name], kept))
    # Pixel size in the sample plane (micrometres per pixel), measured once with a stage
    # micrometer. Each field's own red cells are the ruler; this value is used when a
    # field has too few of them. The default suits a 100x objective on a typical camera.
    spec.append(("um_per_pixel", float, setting(0.1, ge=0.01, le=2.0, label=N_(
        "Pixel size, um per pixel (stage micrometer; used when a field has too few red cells)"))))

    def options(self):
        """The chosen back-end's own settings, as its options dataclass."""
        b = registry[self.backend]
        return b.options(**{f.name: getattr(self, f.name) for f in dataclasses.fields(b.options)})

    return dataclasses.make_dataclass("CameraConfig", spec, namespace={"options": options, "__module__": __name__})


CameraConfig = config_class(backends())


def make_camera(backend: str, **options) -> Camera:
    """A camera of the named back-end, from its own settings (its defaults for those not given)."""
    b = backends().get(backend)
    if b is None:
        raise ValueError(f"unknown camera back-end {backend!r}; choose {_choices(backends())}")
    return b.make(b.options(**options))


def camera_from(cfg) -> Camera:
    """The camera a ``[camera]`` section describes."""
    return make_camera(cfg.backend, **dataclasses.asdict(cfg.options()))

"""DVC's command line with two measured speed-ups, for ``cxrbench run`` and ``cxrbench repro``:
``python -m cxrbench.ops._dvc ARGS`` does what ``dvc ARGS`` does (``cxrbench repro ARGS``: ``dvc repro ARGS``).

DVC rewrites ``dvc.lock`` after every stage. To keep the comments of a YAML file it edits, it parses the
file with ruamel's round-trip loader, which is pure Python: 0.92 s for the ``ci`` profile's 250 KB
``dvc.lock`` (2-core AMD EPYC), once per stage, 51 times a run. ``dvc.lock`` is DVC's own file and holds no
comments, so here its parse for update uses ruamel's safe loader (C: 0.23 s). DVC then changes and dumps
the data as before, and the file it writes is byte-identical (``tests/ops/test_dvc_wrapper.py`` runs a
project both ways). Every other YAML file DVC edits (``dvc.yaml``, ``params.yaml``) keeps the round-trip
parse. If a DVC release moves the parser, the wrapper says so and DVC runs unchanged.

A second measured cost: to read a stage's params DVC looks each key up with ``dpath.get``, which walks every
leaf of ``params.yaml`` for every key (1,221 keys over the ``sample`` pipeline: most of a no-op ``dvc
repro``). Here a key without glob characters is looked up directly, segment by segment, with dpath's
result (``tests/ops/test_dvc_wrapper.py`` compares both on every param key of ``dvc.yaml``); a key with
``*?[]`` still goes to dpath.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["patch", "patch_params", "param_get", "main", "repro_main"]

LOCK_NAME = "dvc.lock"
GLOB = set("*?[]")
_MISSING = object()


def _step(node, seg: str):
    if isinstance(node, dict):
        if seg in node:
            return node[seg]
        found = [v for k, v in node.items() if str(k) == seg]          # dpath compares keys as text
        return found[0] if len(found) == 1 else _MISSING
    if isinstance(node, (list, tuple)) and seg.isdigit() and int(seg) < len(node):
        return node[int(seg)]
    return _MISSING


def param_get(config, key: str, get):
    """``dpath.get(config, key, separator=".")`` for a key without glob characters, without walking every leaf
    of ``config``; ``get`` (dpath's) for any other key. KeyError where the key is not there, as dpath."""
    if GLOB & set(key) or not key:
        return get(config, key, separator=".")
    node = config
    for seg in key.split("."):
        node = _step(node, seg)
        if node is _MISSING:
            raise KeyError(key)
    return node


def patch_params() -> bool:
    """Look params up with :func:`param_get` in DVC's ``read_param_file``; True if DVC's was found."""
    try:
        from dvc.dependency import param as dvc_param
    except ImportError:
        return False
    dpath = getattr(dvc_param, "dpath", None)
    if dpath is None or not callable(getattr(dpath, "get", None)):
        return False
    if getattr(dpath, "cxrbench_param_get", False):
        return True

    class _Dpath:                      # the module DVC's param.py calls as ``dpath``: only ``get`` changes
        cxrbench_param_get = True

        def __getattr__(self, name):
            return getattr(dpath, name)

        @staticmethod
        def get(obj, glob, separator="/", default=_MISSING):
            if separator != ".":
                return dpath.get(obj, glob, separator=separator) if default is _MISSING else \
                    dpath.get(obj, glob, separator=separator, default=default)
            try:
                return param_get(obj, glob, dpath.get)
            except KeyError:
                if default is _MISSING:
                    raise
                return default

    dvc_param.dpath = _Dpath()
    return True


def patch() -> bool:
    """Parse ``dvc.lock`` for update with the safe loader; True if DVC's parser was found and replaced."""
    try:
        from dvc.utils.serialize import _yaml
    except ImportError:
        return False
    original = getattr(_yaml, "parse_yaml_for_update", None)
    if original is None or not callable(getattr(_yaml, "parse_yaml", None)):
        return False
    if getattr(original, "cxrbench_lock_parse", False):
        return True

    def parse_yaml_for_update(text, path):
        if Path(str(path)).name == LOCK_NAME:
            return _yaml.parse_yaml(text, path, typ="safe")
        return original(text, path)

    parse_yaml_for_update.cxrbench_lock_parse = True
    _yaml.parse_yaml_for_update = parse_yaml_for_update
    return True


def main(argv: list[str] | None = None) -> int:
    if not patch():
        print("[cxrbench] this DVC has no dvc.utils.serialize._yaml.parse_yaml_for_update: dvc.lock is parsed "
              "as DVC does (about 0.7 s more a stage)", file=sys.stderr, flush=True)
    if not patch_params():
        print("[cxrbench] this DVC's dvc.dependency.param has no dpath: params are looked up as DVC does",
              file=sys.stderr, flush=True)
    from dvc.cli import main as dvc_main

    return int(dvc_main(list(sys.argv[1:] if argv is None else argv)) or 0)


def repro_main(argv: list[str] | None = None) -> int:
    """``cxrbench repro [dvc repro arguments]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print("usage: cxrbench repro [dvc repro arguments]\n\nRuns `dvc repro` with dvc.lock parsed by the safe "
              "YAML loader and params looked up directly (cxrbench.ops._dvc): the same outputs and dvc.lock, less "
              "of DVC's own time. DVC's options follow: dvc repro --help.")
        return 0
    return main(["repro", *argv])


if __name__ == "__main__":
    sys.exit(main())

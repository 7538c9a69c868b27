"""Stage download: fetch one source of params.yaml `sources` into data/raw/<name>.

usage: python stages/download.py NAME
"""

import argparse
from pathlib import Path

from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.core.io import write_json
from cxrbench.data.sources import ExtractLimits, SourceSpec, fetch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("name", help="a key of params.yaml `sources`")
    P.add_stage_arguments(ap)
    args = ap.parse_args(argv)
    params = P.from_arguments(args)
    sources = P.section(params, "sources")
    if args.name not in sources:
        raise P.ParamError("sources", f"no source named {args.name!r}; valid names are {sorted(sources)}")
    spec = SourceSpec.from_params(args.name, sources[args.name])
    record = fetch(spec, Path(paths.RAW) / args.name, ExtractLimits.from_params(params))
    write_json(Path(paths.DOWNLOAD_METRICS) / f"{args.name}.json", record)
    print(f"{args.name}: {record['files']} files, {record['bytes'] / 1e6:.1f} MB from {record['origin']}")


if __name__ == "__main__":
    P.run_stage(main)

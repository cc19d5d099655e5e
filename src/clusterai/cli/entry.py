"""The `clusterai` command's entry point. `clusterai worker` must run where only Dask and psutil are
installed (and `clusterai join`, which starts one), and `clusterai serve-model` where only the llm
extra is, so these are dispatched before the full CLI (the API, pydantic and the rest) is imported."""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        from clusterai.worker.cli import worker_main

        sys.exit(worker_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "join":
        from clusterai.worker.join import join_main

        sys.exit(join_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "serve-model":
        from clusterai.worker.cli import serve_model_main

        sys.exit(serve_model_main(sys.argv[2:]))
    try:
        from clusterai.cli.main import main as full
    except ImportError as exc:
        sys.exit(f"this command needs clusterai's server extra ({exc}): pip install 'clusterai[server]'\n"
                 "(a light install runs only `clusterai worker`)")
    full()


if __name__ == "__main__":
    main()

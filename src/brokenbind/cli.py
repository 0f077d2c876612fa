"""``brokenbind``: the command line over ``brokenbind.api`` (fit / validate / test / predict), plus ``brokenbind tune``.

Exit codes: 0 finished; 2 bad configuration or data (one paragraph naming the key or file; a run directory created by
the failed start is removed); 3 training diverged (NaN/Inf); 128 + signal number when a signal stopped the run (its
checkpoint is named).
"""

import sys

from brokenbind.api import BrokenBindCLI, Stopped, run
from brokenbind.errors import ConfigError, DataError, DivergenceError


def cli(args: list[str] | None = None) -> BrokenBindCLI:
    """Parse ``args`` (default: the command line), build everything and run the subcommand. Errors a user can fix
    exit with code 2 and one paragraph; see the module docstring for the other exit codes."""
    try:
        return run(sys.argv[1:] if args is None else args)
    except Stopped as stop:
        print(f"brokenbind: {stop}", file=sys.stderr)
        raise SystemExit(stop.code) from stop
    except DivergenceError as error:
        print(f"brokenbind: DivergenceError: {error}", file=sys.stderr)
        raise SystemExit(3) from error
    except (ConfigError, DataError) as error:
        print(f"brokenbind: {type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(2) from error


def main() -> None:
    """Console entry point ``brokenbind``."""
    if sys.argv[1:2] == ["tune"]:
        from brokenbind.tune import main as tune

        tune(sys.argv[2:])
        return
    cli()


if __name__ == "__main__":
    main()

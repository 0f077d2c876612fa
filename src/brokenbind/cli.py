"""``brokenbind``: the command line over ``brokenbind.api`` (fit / validate / test / predict), plus ``brokenbind tune``
and ``brokenbind embed``.

Exit codes: 0 finished; 2 bad configuration or data (one paragraph naming the key or file; a run directory created by
the failed start is removed); 3 training diverged (NaN/Inf); 4 a file could not be written (a full disk, a directory
that is not writable: the file is named, and no truncated checkpoint is left); 128 + signal number when a signal stopped
the run (its checkpoint is named).
"""

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from brokenbind.api import RunResult, run
from brokenbind.errors import ConfigError, DataError, DivergenceError, Stopped, StorageError


@contextmanager
def exit_codes() -> Iterator[None]:
    """The errors of a run as one line on stderr and the module docstring's exit codes."""
    try:
        yield
    except Stopped as stop:
        print(f"brokenbind: {stop}", file=sys.stderr)
        raise SystemExit(stop.code) from stop
    except DivergenceError as error:
        print(f"brokenbind: DivergenceError: {error}", file=sys.stderr)
        raise SystemExit(3) from error
    except StorageError as error:
        print(f"brokenbind: StorageError: {error}", file=sys.stderr)
        raise SystemExit(4) from error
    except (ConfigError, DataError) as error:
        print(f"brokenbind: {type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(2) from error


def cli(args: list[str] | None = None) -> RunResult:
    """Parse ``args`` (default: the command line), build everything and run the subcommand. Errors a user can fix
    exit with code 2 and one paragraph; see the module docstring for the other exit codes."""
    with exit_codes():
        return run(sys.argv[1:] if args is None else args)


def main() -> None:
    """Console entry point ``brokenbind``."""
    if sys.argv[1:2] == ["tune"]:
        from brokenbind.tune import main as tune

        with exit_codes():
            tune(sys.argv[2:])
        return
    if sys.argv[1:2] == ["embed"]:
        from brokenbind.embed import main as embed

        with exit_codes():
            embed(sys.argv[2:])
        return
    cli()


if __name__ == "__main__":
    main()

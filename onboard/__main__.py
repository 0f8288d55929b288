"""`python -m onboard` and the `onboard` command: the CLI, once it is loaded."""

import os
import signal


def main() -> int:
    try:
        from .cli import main as cli
    except KeyboardInterrupt:
        # Ctrl-C while the CLI loads (a second or more on a busy machine): nothing was done,
        # so end as a process that SIGINT stops ends (the shell sees 130), not with a traceback.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        raise  # where the signal does not end the process (Windows)
    return cli()


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m looptrace run app.py`` is ``looptrace run app.py``."""

from looptrace.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

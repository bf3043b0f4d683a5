"""``python -m loadtest``: see ``loadtest.cli`` and README's "Load testing"."""

from gevent import monkey

monkey.patch_all()  # before anything opens a socket: Locust's users are gevent greenlets

import sys  # noqa: E402

from loadtest.cli import main  # noqa: E402

sys.exit(main())

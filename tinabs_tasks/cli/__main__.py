"""`python -m tinabs_tasks.cli`: the `tinabs` command."""
import sys

from tinabs_tasks.cli import main

sys.exit(main())

import sys

from gradcamo.cli import main

sys.exit(main())

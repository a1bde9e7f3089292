import sys

from edgeops.demo.run import main

sys.exit(main())

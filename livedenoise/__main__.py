from livedenoise.cli import main

raise SystemExit(main())

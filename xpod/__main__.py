from xpod.runtime.cli import main

raise SystemExit(main())

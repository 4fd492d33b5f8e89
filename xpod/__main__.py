from xpod.runtime.cli.main import main

raise SystemExit(main())

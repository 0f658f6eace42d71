from hf_sae_steer.cli import main

raise SystemExit(main())

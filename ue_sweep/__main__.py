from ue_sweep.cli.main import main

if __name__ == "__main__":  # spawned ranks re-import this module and must not start a job
    main()

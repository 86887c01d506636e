"""`python -m bench [--quick] [--postgres] [--profile] [--only FIGURES]`."""

from bench.run import main

if __name__ == "__main__":
    main()

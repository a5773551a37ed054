from weightidx.cli import main

main()

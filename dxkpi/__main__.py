from dxkpi.collector.cli import main

main()

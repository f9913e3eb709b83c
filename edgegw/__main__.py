from edgegw.cli import main

main()

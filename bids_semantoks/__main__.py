from bids_semantoks.cli import main

main()

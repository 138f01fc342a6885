"""One module per `tinabs` subcommand; each exposes add_arguments(parser) and run(args)."""

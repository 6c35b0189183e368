"""One module per ``loadgen`` command; each adds its options to a parser and runs on the parsed arguments."""

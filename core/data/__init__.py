"""The data worker: load -> align -> merge -> render with chat templates -> tokenize/pack."""

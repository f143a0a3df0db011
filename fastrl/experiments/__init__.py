"""Experiments that answer questions about fastrl's settings; each is `python -m fastrl.experiments.<name>`."""

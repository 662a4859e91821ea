"""One module per protocol of ``mg3 eval``: each rolls a model out (through the vector env) on
held-out simulator data and returns a dict of plain values."""

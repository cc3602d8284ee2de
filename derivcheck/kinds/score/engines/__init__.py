"""The score kind's quantities in each engine: SymPy, hand-written numpy, torch autograd, finite differences."""

"""The symbolic engine: SymPy derivations of layers (whole or as local rules), of fields, compiled with lambdify."""

"""PDE cases (``pde``, ``variables``): operators on manufactured solutions and PINN residuals."""

"""Speed and cost: analytic FLOPs, peak-FLOPs table, cost estimates, compile helpers."""

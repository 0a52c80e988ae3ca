"""Ray Tune sweeps: the driver (`driver`, `husai sweep`), one Tune trial in its worker
(`trial`), grid points trained as one stack (`bundles`), how trials are proposed (`search`:
Optuna or Tune's grid), the activation sets a sweep's trials read (`sets`), the terminal's
trial lines and the tracking-server watch (`progress`), an interrupted sweep found and resumed
(`resume`), its end recorded (`end`), the Ray instance it starts or joins (`ray_runtime`), and
the confirmation of the best recipe on fresh seeds (`confirm`). Ray is imported only by
`driver`, `trial`, `search`, `progress` and `ray_runtime`."""

"""Seed-batched TopK / BatchTopK training: many SAEs (a trial's seeds, its trained nulls, a grid
bundle's points) as one stacked model. `train` drives the stack (its parameters, one Adam,
every member's own batches) and hands back ordinary sae-lens SAEs; `sparse` is one training
step for all members with hand-written sparse gradients; `select` chooses each row's latents
(TopK, BatchTopK, AuxK) in one batched matmul or in cache-sized chunks."""

"""Teacher trajectories: rollouts through the decode loop (`rollout`) and their storage (`store`)."""

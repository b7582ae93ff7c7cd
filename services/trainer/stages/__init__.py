"""The stages of a run. Heavy ones (reward model, RM gate, PPO, policy gate) run in a process
of their own through an executor; light ones (snapshot, promote) in the worker."""

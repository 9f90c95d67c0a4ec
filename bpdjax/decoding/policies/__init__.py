"""Step policies (protocol.StepPolicy): how much of a drafter's proposal the loop verifies."""

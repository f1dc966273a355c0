"""What the stages share at run time: Ray start-up and the GPU policy, the console and progress, the Ray Train scaffold."""

"""The procedural renderer: a ray caster, figures and scenes framed like photographs (numpy only). `stages.synth` writes its images."""

package main

// sdRuntime serves image model packages (Stable Diffusion 1.5 LCM) on the
// card. The SD runtime is not in this build yet, so it recognises no package.
func sdRuntime() modelRuntime {
	return modelRuntime{name: "sd", detect: func(string) bool { return false }}
}

package main

// Pins modules that packages still being written import; removed once they land.
import (
	_ "github.com/dlclark/regexp2"
	_ "github.com/ebitengine/purego"
	_ "golang.org/x/text/unicode/norm"
)

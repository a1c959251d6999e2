package llm

import (
	"os"
	"strings"
)

func writeEmpty(path string) error        { return os.WriteFile(path, nil, 0o644) }
func removeFile(path string) error        { return os.Remove(path) }
func truncate(path string, n int64) error { return os.Truncate(path, n) }
func contains(s, sub string) bool         { return strings.Contains(s, sub) }

//go:build !race

package sd

const raceEnabled = false

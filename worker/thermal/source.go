package thermal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// DefaultZone is the Raspberry Pi 5's SoC thermal zone.
const DefaultZone = "/sys/class/thermal/thermal_zone0/temp"

// Source reads one temperature in °C.
type Source func(ctx context.Context) (float64, error)

// ErrBadZone is matched by the error of a thermal zone file that does not
// hold a temperature.
var ErrBadZone = errors.New("thermal: not a thermal zone reading")

// ParseZone parses the content of a Linux thermal zone `temp` file: an
// integer in millidegrees Celsius, optionally signed, with surrounding
// white space.
func ParseZone(b []byte) (float64, error) {
	s := bytes.TrimSpace(b)
	if len(s) == 0 || len(s) > 12 {
		return 0, fmt.Errorf("%w: %q", ErrBadZone, s)
	}
	mc, err := strconv.ParseInt(string(s), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrBadZone, s)
	}
	if mc < -273150 || mc > 1_000_000 {
		return 0, fmt.Errorf("%w: %d m°C is not a temperature", ErrBadZone, mc)
	}
	return float64(mc) / 1000, nil
}

// ZoneSource reads a thermal zone file (any path holding millidegrees,
// e.g. DefaultZone) at every call.
func ZoneSource(path string) Source {
	return func(context.Context) (float64, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return 0, fmt.Errorf("thermal: %w", err)
		}
		c, err := ParseZone(b)
		if err != nil {
			return 0, fmt.Errorf("%w (%s)", err, path)
		}
		return c, nil
	}
}

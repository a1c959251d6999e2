package main

import (
	"errors"
	"strconv"
	"strings"
)

// optFloat is a float flag that may be left out: nil then, "let the model
// decide". It prints no default in the help.
type optFloat struct{ v *float64 }

func (o *optFloat) String() string {
	if o == nil || o.v == nil {
		return ""
	}
	return strconv.FormatFloat(*o.v, 'g', -1, 64)
}

func (o *optFloat) Set(s string) error {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return err
	}
	o.v = &f
	return nil
}

// optUint is an unsigned flag that may be left out (a seed: nil is "the
// worker draws one"). It prints no default in the help.
type optUint struct{ v *uint64 }

func (o *optUint) String() string {
	if o == nil || o.v == nil {
		return ""
	}
	return strconv.FormatUint(*o.v, 10)
}

func (o *optUint) Set(s string) error {
	u, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return err
	}
	o.v = &u
	return nil
}

// pathList is a repeatable path flag (--image a.png --image b.jpg), in order.
type pathList []string

func (p *pathList) String() string { return strings.Join(*p, ",") }

func (p *pathList) Set(s string) error {
	if s == "" {
		return errors.New("empty path")
	}
	*p = append(*p, s)
	return nil
}

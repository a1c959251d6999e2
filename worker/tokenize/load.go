package tokenize

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ErrFormat is wrapped by every error about the content of a tokenizer file:
// bad JSON, missing fields, or a component this package does not implement.
var ErrFormat = errors.New("tokenize: bad tokenizer file")

// ErrNotFound is returned by LoadDir and LoadCLIPDir when the folder holds no
// tokenizer files.
var ErrNotFound = errors.New("tokenize: no tokenizer files")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, args...))
}

// readFile reads path, or path+".gz" if path is missing, and gunzips a file
// whose name ends in .gz or whose content starts with the gzip magic.
func readFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !strings.HasSuffix(path, ".gz") {
		if d, err2 := os.ReadFile(path + ".gz"); err2 == nil {
			data, err, path = d, nil, path+".gz"
		}
	}
	if err != nil {
		return nil, fmt.Errorf("tokenize: %w", err)
	}
	if len(data) >= 2 && data[0] == 0x1f && data[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrFormat, path, err)
		}
		out := bytes.NewBuffer(make([]byte, 0, 6*len(data)))
		if _, err := io.Copy(out, zr); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrFormat, path, err)
		}
		return out.Bytes(), nil
	}
	return data, nil
}

// findFile returns the first of names that exists in dir, plain or with .gz.
func findFile(dir string, names ...string) (string, bool) {
	for _, n := range names {
		for _, p := range []string{filepath.Join(dir, n), filepath.Join(dir, n+".gz")} {
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				return p, true
			}
		}
	}
	return "", false
}

// findTokenizerDir returns dir if it holds file (plain or .gz), else the
// single subfolder of dir whose name ends in "tokenizer" and holds it.
func findTokenizerDir(dir, file string) (string, error) {
	if _, ok := findFile(dir, file); ok {
		return dir, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrNotFound, file, err)
	}
	var found []string
	for _, e := range entries {
		if e.IsDir() && strings.HasSuffix(strings.ToLower(e.Name()), "tokenizer") {
			if _, ok := findFile(filepath.Join(dir, e.Name()), file); ok {
				found = append(found, e.Name())
			}
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%w: no %s in %s", ErrNotFound, file, dir)
	case 1:
		return filepath.Join(dir, found[0]), nil
	}
	return "", fmt.Errorf("%w: no %s in %s, and several tokenizer folders have one (%s): name one", ErrNotFound, file, dir, strings.Join(found, ", "))
}

// tokenizerFile is the part of a Hugging Face tokenizer.json that is read
// with encoding/json; the model's vocab and merges, nearly all of the 11 MB
// of a Qwen3 file, are read by jsonScanner.
type tokenizerFile struct {
	AddedTokens  []addedTokenJSON `json:"added_tokens"`
	Normalizer   json.RawMessage  `json:"normalizer"`
	PreTokenizer json.RawMessage  `json:"pre_tokenizer"`
	Decoder      json.RawMessage  `json:"decoder"`
}

// modelJSON is the "model" object without vocab and merges.
type modelJSON struct {
	Type                    string   `json:"type"`
	UnkToken                *string  `json:"unk_token"`
	ContinuingSubwordPrefix *string  `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string  `json:"end_of_word_suffix"`
	Dropout                 *float64 `json:"dropout"`
	ByteFallback            bool     `json:"byte_fallback"`
	IgnoreMerges            bool     `json:"ignore_merges"`
}

type addedTokenJSON struct {
	ID         *int   `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// component is the {"type": ...} head of a normalizer, pre-tokenizer or
// decoder, with the fields of the kinds this package implements.
type component struct {
	Type           string            `json:"type"`
	Normalizers    []json.RawMessage `json:"normalizers"`
	PreTokenizers  []json.RawMessage `json:"pretokenizers"`
	Decoders       []json.RawMessage `json:"decoders"`
	Pattern        *patternJSON      `json:"pattern"`
	Behavior       string            `json:"behavior"`
	Invert         bool              `json:"invert"`
	AddPrefixSpace bool              `json:"add_prefix_space"`
	UseRegex       *bool             `json:"use_regex"`
	Individual     bool              `json:"individual_digits"`
}

type patternJSON struct {
	Regex  *string `json:"Regex"`
	String *string `json:"String"`
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// parseNormalizer accepts no normalizer, NFC, or a Sequence of NFC.
func parseNormalizer(raw json.RawMessage) (nfc bool, err error) {
	if isNull(raw) {
		return false, nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return false, formatErr("normalizer: %v", err)
	}
	switch c.Type {
	case "NFC":
		return true, nil
	case "Sequence":
		for i, n := range c.Normalizers {
			sub, err := parseNormalizer(n)
			if err != nil {
				return false, fmt.Errorf("%w (in normalizer sequence item %d)", err, i)
			}
			nfc = nfc || sub
		}
		return nfc, nil
	}
	return false, formatErr("normalizer type %q is not supported (only NFC)", c.Type)
}

// parsePreTokenizer turns the pre_tokenizer into split steps. byteLevel
// reports whether a ByteLevel step was present.
func parsePreTokenizer(raw json.RawMessage, steps []splitStep) (_ []splitStep, byteLevel bool, err error) {
	if isNull(raw) {
		return steps, false, nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, false, formatErr("pre_tokenizer: %v", err)
	}
	switch c.Type {
	case "Sequence":
		for i, p := range c.PreTokenizers {
			var bl bool
			steps, bl, err = parsePreTokenizer(p, steps)
			if err != nil {
				return nil, false, fmt.Errorf("%w (in pre_tokenizer sequence item %d)", err, i)
			}
			byteLevel = byteLevel || bl
		}
		return steps, byteLevel, nil
	case "ByteLevel":
		if c.AddPrefixSpace {
			return nil, false, formatErr("pre_tokenizer ByteLevel with add_prefix_space true is not supported")
		}
		if c.UseRegex == nil || *c.UseRegex {
			steps = append(steps, splitStep{name: "gpt2", next: gpt2Next})
		}
		return steps, true, nil
	case "Digits":
		return append(steps, splitStep{name: "digits", next: digitsNext(c.Individual)}), false, nil
	case "Split":
		// Isolated: matches and the text between them are pieces. Removed
		// with invert: only the matches are (gpt-4o, CLIP).
		keepGaps := true
		switch {
		case c.Behavior == "Isolated" && !c.Invert:
		case c.Behavior == "Removed" && c.Invert:
			keepGaps = false
		default:
			return nil, false, formatErr("pre_tokenizer Split with behavior %q invert %v is not supported (only Isolated, or Removed with invert)", c.Behavior, c.Invert)
		}
		if c.Pattern == nil || (c.Pattern.Regex == nil && c.Pattern.String == nil) {
			return nil, false, formatErr("pre_tokenizer Split has no pattern")
		}
		if c.Pattern.String != nil {
			if *c.Pattern.String == "" {
				return nil, false, formatErr("pre_tokenizer Split has an empty pattern")
			}
			if !keepGaps {
				return nil, false, formatErr("pre_tokenizer Split with a String pattern and invert is not supported")
			}
			return append(steps, literalStep(*c.Pattern.String)), false, nil
		}
		if *c.Pattern.Regex == qwenPattern && keepGaps {
			return append(steps, splitStep{name: "qwen", next: qwenNext}), false, nil
		}
		st, err := regexStep(*c.Pattern.Regex, keepGaps)
		if err != nil {
			return nil, false, err
		}
		return append(steps, st), false, nil
	case "":
		return nil, false, formatErr("pre_tokenizer has no type")
	}
	return nil, false, formatErr("pre_tokenizer type %q is not supported", c.Type)
}

// parseDecoder accepts ByteLevel (or none, or a Sequence holding only
// ByteLevel): the inverse of the byte mapping.
func parseDecoder(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var c component
	if err := json.Unmarshal(raw, &c); err != nil {
		return formatErr("decoder: %v", err)
	}
	switch c.Type {
	case "ByteLevel":
		return nil
	case "Sequence":
		for i, d := range c.Decoders {
			if err := parseDecoder(d); err != nil {
				return fmt.Errorf("%w (in decoder sequence item %d)", err, i)
			}
		}
		return nil
	}
	return formatErr("decoder type %q is not supported (only ByteLevel)", c.Type)
}

// walkTokenizerJSON walks a tokenizer.json once. It parses the model's
// vocab and merges straight into vb and ml, and returns the rest as two small
// JSON objects for encoding/json: the top level without "model", and the
// model without "vocab" and "merges".
func walkTokenizerJSON(data []byte, vb *vocabBuilder, ml *mergeList) (top, model []byte, err error) {
	sc := jsonScanner{b: data}
	top, model = []byte{'{'}, []byte{'{'}
	var hasModel, hasVocab, hasMerges bool
	err = sc.objectFields(func(key string) error {
		if key != "model" || sc.peek() != '{' {
			raw, err := sc.skipValue()
			if err != nil {
				return fmt.Errorf("%q: %w", key, err)
			}
			if key != "model" {
				top = appendField(top, key, raw)
			} else if !isNull(raw) {
				return fmt.Errorf("model is not an object")
			}
			return nil
		}
		hasModel = true
		return sc.objectFields(func(k string) error {
			switch {
			case k == "vocab" && sc.peek() == '{':
				hasVocab = true
				if err := sc.objectStringInt(vb.add); err != nil {
					return fmt.Errorf("model vocab: %w", err)
				}
				return nil
			case k == "merges" && sc.peek() == '[':
				hasMerges = true
				if err := sc.merges(ml.add); err != nil {
					return fmt.Errorf("model merges: %w", err)
				}
				return nil
			}
			raw, err := sc.skipValue()
			if err != nil {
				return fmt.Errorf("model %q: %w", k, err)
			}
			if k == "vocab" || k == "merges" {
				return fmt.Errorf("model %s is not an object/array", k)
			}
			model = appendField(model, k, raw)
			return nil
		})
	})
	if err != nil {
		return nil, nil, formatErr("not a tokenizer.json: %v", err)
	}
	if sc.ws(); sc.i != len(data) {
		return nil, nil, formatErr("not a tokenizer.json: data after the top-level object at offset %d", sc.i)
	}
	switch {
	case !hasModel:
		return nil, nil, formatErr("no model")
	case !hasVocab:
		return nil, nil, formatErr("model has no vocab")
	case !hasMerges:
		return nil, nil, formatErr("model has no merges")
	}
	return append(top, '}'), append(model, '}'), nil
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/kiln-project/kiln/worker/tokenize"
)

// tokenizeUsage is the help text of kiln tokenize.
const tokenizeUsage = `usage: kiln tokenize --tokenizer PATH [--clip] [TEXT...]

Prints the token ids of TEXT as a JSON array: for a Qwen3-style tokenizer
with no special tokens added (added tokens written in the text, such as
<|im_start|>, are matched); with --clip with <|startoftext|> and
<|endoftext|>, followed by a second line with the 77 ids the text encoder
takes (truncated, padded with <|endoftext|>). Several TEXT arguments are
joined with spaces.

Without TEXT it reads JSON lines {"text": ...} from stdin and writes one
line {"ids": [...]} for each (with --clip also "ids77"), for checking parity
in bulk against the reference cases.

PATH is a tokenizer.json or tokenizer.json.gz, or a model folder holding one;
with --clip, the folder holding vocab.json and merges.txt (plain or .gz).

flags:
`

// textEncoder is what kiln tokenize needs of either tokenizer.
type textEncoder interface {
	EncodeAppend(dst []int, text string) []int
}

// runTokenize is the kiln tokenize sub-command.
func runTokenize(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kiln tokenize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("tokenizer", "", "tokenizer.json(.gz), a folder holding one, or with --clip the CLIP folder")
	isCLIP := fs.Bool("clip", false, "CLIP tokenizer: PATH is a folder with vocab.json and merges.txt")
	fs.Usage = func() {
		fmt.Fprint(stderr, tokenizeUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if *path == "" {
		fmt.Fprintln(stderr, "kiln tokenize: --tokenizer is required")
		fs.Usage()
		return errUsage
	}

	var enc textEncoder
	var clip *tokenize.CLIP
	if *isCLIP {
		c, err := tokenize.LoadCLIP(*path)
		if err != nil {
			return err
		}
		enc, clip = c, c
	} else {
		var tok *tokenize.BPE
		var err error
		if st, serr := os.Stat(*path); serr == nil && st.IsDir() {
			tok, err = tokenize.LoadDir(*path)
		} else {
			tok, err = tokenize.Load(*path)
		}
		if err != nil {
			return err
		}
		enc = tok
	}

	w := bufio.NewWriter(stdout)
	var line []byte
	if fs.NArg() > 0 {
		ids := enc.EncodeAppend(nil, strings.Join(fs.Args(), " "))
		line = appendIDs(line, ids)
		line = append(line, '\n')
		if clip != nil {
			ids77 := clip.Pad77(ids)
			line = appendIDs32(line, ids77[:])
			line = append(line, '\n')
		}
		w.Write(line)
		return w.Flush()
	}

	in := bufio.NewReaderSize(stdin, 1<<16)
	var ids []int
	for n := 1; ; n++ {
		if err := ctx.Err(); err != nil {
			w.Flush()
			return err
		}
		raw, err := in.ReadBytes('\n')
		if len(strings.TrimSpace(string(raw))) > 0 {
			var req struct {
				Text *string `json:"text"`
			}
			if jerr := json.Unmarshal(raw, &req); jerr != nil {
				w.Flush()
				return fmt.Errorf("stdin line %d: %w", n, jerr)
			}
			if req.Text == nil {
				w.Flush()
				return fmt.Errorf("stdin line %d: no \"text\" field", n)
			}
			ids = enc.EncodeAppend(ids[:0], *req.Text)
			line = append(line[:0], `{"ids":`...)
			line = appendIDs(line, ids)
			if clip != nil {
				ids77 := clip.Pad77(ids)
				line = append(line, `,"ids77":`...)
				line = appendIDs32(line, ids77[:])
			}
			line = append(line, "}\n"...)
			if _, werr := w.Write(line); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			w.Flush()
			return fmt.Errorf("reading stdin: %w", err)
		}
	}
	return w.Flush()
}

func appendIDs(dst []byte, ids []int) []byte {
	dst = append(dst, '[')
	for i, id := range ids {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendInt(dst, int64(id), 10)
	}
	return append(dst, ']')
}

func appendIDs32(dst []byte, ids []int32) []byte {
	dst = append(dst, '[')
	for i, id := range ids {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendInt(dst, int64(id), 10)
	}
	return append(dst, ']')
}

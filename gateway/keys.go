package gateway

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kiln-project/kiln/schema"
)

// ParseKeys reads API keys written as "client:secret" entries separated
// by commas or newlines (blank lines and lines starting with # are
// skipped; in a file, "client secret" works too). A bare "secret" runs as
// defaultClient. Each client must be a subject token: it becomes the kiln
// client id of the key's jobs.
func ParseKeys(text, defaultClient string) ([]Key, error) {
	var keys []Key
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 4096), 1<<16)
	line := 0
	for sc.Scan() {
		line++
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		for _, entry := range strings.Split(l, ",") {
			entry = strings.TrimSpace(entry)
			if entry == "" {
				continue
			}
			k, err := parseKey(entry, defaultClient)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			keys = append(keys, k)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return keys, nil
}

func parseKey(entry, defaultClient string) (Key, error) {
	client, secret, ok := strings.Cut(entry, ":")
	if !ok {
		client, secret, ok = strings.Cut(entry, " ")
	}
	if !ok {
		return Key{Secret: entry, Client: defaultClient}, nil
	}
	client, secret = strings.TrimSpace(client), strings.TrimSpace(secret)
	if !schema.ValidToken(client) {
		return Key{}, fmt.Errorf("client %q is not a client id (letters, digits, '-' and '_')", clip(client))
	}
	if secret == "" || strings.ContainsAny(secret, " \t") {
		return Key{}, fmt.Errorf("client %s: the key is empty or has blanks", client)
	}
	return Key{Secret: secret, Client: client}, nil
}

// ReadKeysFile reads API keys from a file in ParseKeys' format (at most
// 1 MiB).
func ReadKeysFile(path, defaultClient string) ([]Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	if err != nil {
		return nil, err
	}
	if len(b) > 1<<20 {
		return nil, fmt.Errorf("%s is larger than 1 MiB", path)
	}
	keys, err := ParseKeys(string(b), defaultClient)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

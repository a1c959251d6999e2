package main
import (
 _ "github.com/nats-io/nats.go"
 _ "github.com/nats-io/nats.go/jetstream"
 _ "github.com/nats-io/nats-server/v2/server"
 _ "github.com/vmihailenco/msgpack/v5"
 _ "github.com/ebitengine/purego"
 _ "github.com/lmittmann/tint"
 _ "golang.org/x/sync/errgroup"
 _ "golang.org/x/text/unicode/norm"
 _ "github.com/dlclark/regexp2"
 _ "golang.org/x/term"
)
func main(){}

package busredis

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// A go-redis command waits for its answer without regard to its context in
// two cases: on a plain client without Options.ContextTimeoutEnabled, and
// on any autopipeliner once the command is queued (go-redis runs batches
// on the pipeliner's own context). The calls a request makes (ticket mint
// and redemption, revocation check, cap admission) must give up when the
// request's deadline passes, so a hung Redis is answered 503 at once
// rather than after the connection's read timeout. They go through
// process, which waits at most until ctx ends:
//
//   - on an asynchronous autopipeliner (Client.AsyncAutoPipeline, what
//     cmd/topohub uses): the command is submitted and only the wait is
//     abandoned, so a command given up on still completes or fails in
//     its batch, and its result is dropped;
//   - on anything else: Process, which honours ctx only where go-redis
//     does (a plain client with ContextTimeoutEnabled).
//
// An abandoned command may still run: a mint may store a ticket nobody
// receives (it expires unused), a redemption may consume the ticket (the
// client mints another), a cap admission may count a slot (the limiter
// marks the user dirty and its heartbeat writes the true count).

// processor is what runs a command: every go-redis client has Process.
type processor interface {
	Process(ctx context.Context, cmd redis.Cmder) error
}

var errNoProcess = errors.New("redis client cannot run raw commands")

// process runs cmd on rdb and returns its error, or ctx's once ctx ends
// first (see above). After a context error cmd must not be read.
func process(ctx context.Context, rdb redis.Cmdable, cmd redis.Cmder) error {
	if ap, ok := rdb.(*redis.AutoPipeliner); ok && !ap.IsBlocking() {
		if err := ctx.Err(); err != nil {
			return err
		}
		return ap.Submit(ctx, cmd).WaitContext(ctx)
	}
	p, ok := rdb.(processor)
	if !ok {
		return errNoProcess
	}
	return p.Process(ctx, cmd)
}

// evalScript runs a script by its hash, loading it with EVAL when Redis
// does not know it (NOSCRIPT), through process; src is the script's
// source. On error the returned command holds only the error (the one
// sent may still be in flight).
func evalScript(ctx context.Context, rdb redis.Cmdable, script *redis.Script, src string, keys []string, args ...any) *redis.Cmd {
	cmd := redis.NewCmd(ctx, scriptArgs("evalsha", script.Hash(), keys, args)...)
	err := process(ctx, rdb, cmd)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmd = redis.NewCmd(ctx, scriptArgs("eval", src, keys, args)...)
		err = process(ctx, rdb, cmd)
	}
	if err != nil {
		failed := redis.NewCmd(ctx)
		failed.SetErr(err)
		return failed
	}
	return cmd
}

func scriptArgs(op, script string, keys []string, args []any) []any {
	out := make([]any, 0, 3+len(keys)+len(args))
	out = append(out, op, script, len(keys))
	for _, k := range keys {
		out = append(out, k)
	}
	return append(out, args...)
}

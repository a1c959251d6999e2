const { Tokenizer } = require('tokenizers');
const fs = require('fs');
(async () => {
  const path = process.argv[2];
  const special = process.argv[3] === 'clip';
  const t = Tokenizer.fromFile(path);
  const lines = fs.readFileSync(0, 'utf8').split('\n').filter(l => l.length);
  const out = [];
  for (const l of lines) {
    const text = JSON.parse(l).text;
    const e = await t.encode(text, null, { addSpecialTokens: special });
    out.push(JSON.stringify({ text, ids: e.getIds() }));
  }
  process.stdout.write(out.join('\n') + '\n');
})();

"""The HTML of the results page: one static file; a little plain JavaScript lays out and sorts
the per-image table.

Everything here turns already computed numbers and already written image files (paths relative
to the page) into markup, or into the JSON data the page's script builds the per-image rows from
(one ``<script type="application/json">`` per pair set, so the page also works from ``file://``);
nothing is read from disk or the network when the page is opened except the image files beside it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from html import escape

from .plots import curve_svg, distribution_svg, series_colour


@dataclass
class Picture:
    """An image written beside the page: full-size file, thumbnail file and thumbnail size."""

    full: str
    thumb: str
    width: int
    height: int


@dataclass
class ShownPair:
    """The files of one pair whose pictures the page shows.

    ``box``: (y, x, side) of the zoomed crop in image pixels; ``size``: (H, W) of the pair.
    ``fused``/``mu``/``crop``: per fusion label (``mu`` absent for fusions without guidance).
    """

    size: tuple[int, int]
    vis: Picture
    ir: Picture
    box: tuple[int, int, int]
    zoom: int
    crop_vis: str
    crop_ir: str
    fused: dict[str, Picture] = field(default_factory=dict)
    mu: dict[str, Picture] = field(default_factory=dict)
    crop: dict[str, str] = field(default_factory=dict)


@dataclass
class SectionView:
    """One pair set on the page."""

    name: str
    anchor: str
    fusions: list[str]
    metrics: list[str]
    images: list[str]  # every pair's name, in dataset order
    scores: dict  # {fusion: {image: {metric: value}}}
    shown: dict  # {image: ShownPair} for the pairs with pictures
    higher_is_better: dict
    paper: list = field(default_factory=list)  # [(label, {metric: value})]
    paper_key: str | None = None
    note: str = ""
    base: str = ""  # prefix of the picture paths in ``shown``, relative to the page


def fmt(v) -> str:
    if v is None:
        return "—"
    v = float(v)
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    a = abs(v)
    if a >= 1000:
        return f"{v:.1f}"
    if a >= 100:
        return f"{v:.2f}"
    return f"{v:.4f}" if a >= 1e-3 or v == 0 else f"{v:.3e}"


def _mean(values) -> float:
    # NaN is "not available" (an image too small for the metric, a clip's frame without image
    # metrics): left out, as the command line's means leave it out
    vals = [v for v in values if not math.isnan(v)]
    return math.fsum(vals) / len(vals) if vals else float("nan")


def means(section: SectionView) -> dict:
    """{fusion: {metric: mean over the pairs where it is available}} (NaN where it is nowhere)."""
    return {f: {m: _mean(section.scores[f][i][m] for i in section.images) for m in section.metrics}
            for f in section.fusions}


def best_of(values: dict, higher: bool) -> set:
    """Keys holding the best finite value (all of them on a tie)."""
    fin = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    if not fin:
        return set()
    b = max(fin.values()) if higher else min(fin.values())
    return {k for k, v in fin.items() if v == b}


CSS = """
:root{--fg:#1b1b1b;--mut:#666;--line:#ddd;--best:#0a6b2d;--bestbg:#e3f4e8}
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
  margin:0 24px 48px;background:#fff}
h1{font-size:22px;margin:18px 0 4px}
h2{font-size:18px;margin:30px 0 8px;border-bottom:2px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.meta{color:var(--mut);margin:0 0 10px}.note{color:var(--mut);font-size:13px;margin:4px 0 8px}
nav a{margin-right:14px}
table{border-collapse:collapse}
th,td{padding:3px 7px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#f6f6f6;font-weight:600}
td.l,th.l{text-align:left}
table.means td.best{font-weight:700;color:var(--best);background:var(--bestbg)}
table.means td.best::after{content:" \\2605"}
table.means tr.paper td{color:var(--mut);font-style:italic}
table.means tr.paper.first td{border-top:2px solid #bbb}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:baseline}
.plots{display:flex;flex-wrap:wrap;gap:10px 18px}
svg.plot{background:#fff;border:1px solid #eee}
svg .pt{font-size:13px;font-weight:600;fill:#222}svg .pn{font-size:11px;font-weight:400;fill:#777}
svg .tick{font-size:10px;fill:#555}svg .lab{font-size:11px;fill:#333}svg .reflab{font-size:10px;fill:#444}
svg .grid{stroke:#eee}
.sortbar{margin:8px 0;display:flex;gap:14px;align-items:center;flex-wrap:wrap}
.tablebox{overflow:auto;max-height:calc(100vh - 24px);max-width:100%;border:1px solid var(--line)}
table.pairs thead th{position:sticky;top:0;z-index:2;box-shadow:0 1px 0 var(--line)}
table.pairs th,table.pairs td{padding:3px 4px}
table.pairs td.fl{white-space:normal;min-width:6em;max-width:9em}
table.pairs th button{font:inherit;font-weight:600;border:0;background:none;cursor:pointer;padding:0;color:#0645ad}
table.pairs th.on button{color:#000;text-decoration:underline}
table.pairs th .arr{color:#000}
table.pairs tbody{border-bottom:2px solid #bbb}
table.pairs td{vertical-align:middle}
table.pairs td.img{padding:2px}
table.pairs td.best{font-weight:700;color:var(--best)}
table.pairs img{display:block;background:#eee}
.th{position:relative;display:inline-block;line-height:0}
.th .box{position:absolute;border:2px solid #ff0;outline:1px solid #000;pointer-events:none}
.nm{font-weight:600;text-align:left;white-space:nowrap}
.nm small{display:block;font-weight:400;color:var(--mut)}
.fl{text-align:left}
.none{color:#aaa}
p.more{margin:10px 0}p.more button{font:inherit;padding:4px 12px}
"""

JS = r"""
(function(){
  'use strict';
  var q=new URLSearchParams(location.search);
  function esc(s){return String(s).replace(/[&<>"']/g,function(c){
    return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c];});}
  function num(v){return v===null?NaN:typeof v==='string'?Number(v):v;}
  function fmt(v){
    if(isNaN(v)) return 'nan';
    if(!isFinite(v)) return v>0?'inf':'-inf';
    var a=Math.abs(v);
    if(a>=1000) return v.toFixed(1);
    if(a>=100) return v.toFixed(2);
    return a>=1e-3||v===0?v.toFixed(4):v.toExponential(3);
  }
  function Table(wrap){
    var d=JSON.parse(wrap.querySelector('script[type="application/json"]').textContent);
    var t=wrap.querySelector('table.pairs'), base=d.base, k=d.fusions.length, self=this;
    d.rows.forEach(function(r){r[1]=r[1].map(function(vs){return vs.map(num);});});
    this.d=d; this.t=t; this.order=d.rows.map(function(r,i){return i;}); this.shown=0;
    this.sel=wrap.querySelector('select.sortf'); this.more=wrap.querySelector('button.more');
    this.count=wrap.querySelector('.count');
    function img(p, alt, box, size){
      var o='';
      // box: (y, x, side) in image pixels, size: (W, H); the square as percentages of the thumbnail
      if(box){
        var pc=function(v, n){return (100*v/n).toFixed(2)+'%';};
        o='<span class="box" style="left:'+pc(box[1],size[0])+';top:'+pc(box[0],size[1])
          +';width:'+pc(box[2],size[0])+';height:'+pc(box[2],size[1])+'"></span>';
      }
      return '<a class="th" href="'+esc(base+p[0])+'" target="_blank"><img src="'+esc(base+p[1])+'" width="'+p[2]
        +'" height="'+p[3]+'" loading="lazy" decoding="async" alt="'+esc(alt)+'">'+o+'</a>';
    }
    function crop(path, alt, P){
      var px=P.b[2]*P.z;
      return '<a href="'+esc(base+path)+'" target="_blank"><img src="'+esc(base+path)+'" width="'+px+'" height="'+px
        +'" loading="lazy" decoding="async" alt="'+esc(alt)+'" title="'+P.b[2]+'x'+P.b[2]+' pixels, '+P.z+'x"></a>';
    }
    // the best fusion of one pair per metric (all of them on a tie; only with two or more)
    function bests(vals){
      return d.metrics.map(function(m,j){
        if(k<2) return [];
        var fin=[]; vals.forEach(function(vs,f){if(isFinite(vs[j])) fin.push([vs[j],f]);});
        if(!fin.length) return [];
        var b=fin.reduce(function(a,x){return d.hib[j]?Math.max(a,x[0]):Math.min(a,x[0]);}, fin[0][0]);
        return fin.filter(function(x){return x[0]===b;}).map(function(x){return x[1];});
      });
    }
    this.body=function(r){
      var name=r[0], vals=r[1], P=r[2], best=bests(vals), h=['<tbody data-name="'+esc(name)+'">'];
      for(var f=0;f<k;f++){
        h.push('<tr data-f="'+f+'">');
        if(f===0){
          if(P){
            h.push('<td class="nm" rowspan="'+k+'">'+esc(name)+'<small>'+P.s[0]+'x'+P.s[1]+'</small></td>'
              +'<td class="img" rowspan="'+k+'">'+img(P.v,'visible '+name,P.b,P.s)+'</td>'
              +'<td class="img" rowspan="'+k+'">'+img(P.i,'infrared '+name)+'</td>'
              +'<td class="img" rowspan="'+k+'">'+crop(P.cv,'visible crop',P)+crop(P.ci,'infrared crop',P)+'</td>');
          }else{
            h.push('<td class="nm" rowspan="'+k+'">'+esc(name)+'</td>'
              +'<td class="l none" colspan="3" rowspan="'+k+'">pictures not shown (report limit)</td>');
          }
        }
        h.push('<td class="fl"><span class="sw" style="background:'+d.colours[f]+'"></span>'+esc(d.fusions[f])+'</td>');
        if(P){
          h.push('<td class="img">'+(P.m[f]?img(P.m[f],'mu '+d.fusions[f]):'<span class=none>\u2014</span>')+'</td>'
            +'<td class="img">'+img(P.f[f],'fused '+d.fusions[f])+'</td>'
            +'<td class="img">'+crop(P.c[f],'crop '+d.fusions[f],P)+'</td>');
        }else h.push('<td></td><td></td><td></td>');
        for(var j=0;j<d.metrics.length;j++){
          h.push('<td data-m="'+esc(d.metrics[j])+'"'+(best[j].indexOf(f)>=0?' class="best"':'')+'>'
            +fmt(vals[f][j])+'</td>');
        }
        h.push('</tr>');
      }
      h.push('</tbody>');
      return h.join('');
    };
    // lay out rows [shown, n) of the current order, after the ones already there
    this.show=function(n){
      n=Math.min(n, self.order.length);
      var h=[];
      for(var i=self.shown;i<n;i++) h.push(self.body(d.rows[self.order[i]]));
      t.insertAdjacentHTML('beforeend', h.join(''));
      self.shown=Math.max(n, self.shown);
      if(self.count) self.count.textContent=self.shown+' of '+self.order.length+' pairs shown';
      if(self.more) self.more.hidden=self.shown>=self.order.length;
    };
    this.sort=function(m, f, dir){
      var j=d.metrics.indexOf(m), rows=d.rows;
      self.order.sort(function(a,b){
        if(m==='image'){var x=rows[a][0], y=rows[b][0]; return dir*(x<y?-1:x>y?1:0)||a-b;}
        var u=rows[a][1][f][j], v=rows[b][1][f][j], nu=isNaN(u), nv=isNaN(v);
        if(nu||nv) return (nu-nv)||a-b;
        return dir*(u-v)||a-b;
      });
      var n=Math.max(self.shown, d.page);
      while(t.tBodies.length) t.removeChild(t.tBodies[0]);
      self.shown=0; self.show(n);
      t.setAttribute('data-sort', m); t.setAttribute('data-dir', dir>0?'asc':'desc');
      t.setAttribute('data-sort-fusion', f);
      Array.prototype.forEach.call(t.tHead.querySelectorAll('th[data-m]'), function(th){
        var on=th.getAttribute('data-m')===m; th.classList.toggle('on', on);
        th.querySelector('.arr').textContent=on?(dir>0?' \u25b2':' \u25bc'):'';
      });
      if(self.sel) self.sel.value=String(f);
    };
    function bestDir(th){return th.getAttribute('data-hib')==='0'?1:-1;}
    if(this.more) this.more.addEventListener('click', function(){self.show(self.shown+d.page);});
    Array.prototype.forEach.call(t.tHead.querySelectorAll('th[data-m] button'), function(b){
      b.addEventListener('click', function(){
        var th=b.parentNode, m=th.getAttribute('data-m');
        var dir=t.getAttribute('data-sort')===m?(t.getAttribute('data-dir')==='asc'?-1:1):bestDir(th);
        self.sort(m, self.sel?+self.sel.value:0, dir);
      });
    });
    if(this.sel) this.sel.addEventListener('change', function(){
      var m=t.getAttribute('data-sort');
      if(m&&m!=='image') self.sort(m, +self.sel.value, t.getAttribute('data-dir')==='asc'?1:-1);
    });
    var m=q.get('sort'), th=m?t.tHead.querySelector('th[data-m="'+CSS.escape(m)+'"]'):null;
    if(th){
      var fq=q.get('fusion')||'0', f=d.fusions.indexOf(fq);
      if(f<0) f=/^\d+$/.test(fq)&&+fq<k?+fq:0;
      var dq=q.get('dir'); this.sort(m, f, dq==='asc'?1:dq==='desc'?-1:bestDir(th));
    }else this.show(d.page);
  }
  Array.prototype.forEach.call(document.querySelectorAll('div.pairwrap'), function(w){new Table(w);});
  // for timing: milliseconds from the start of navigation until the first rows are in the
  // document, and until the frame showing them has been painted (a task after the next frame)
  var root=document.documentElement;
  root.setAttribute('data-rendered-ms', performance.now().toFixed(1));
  requestAnimationFrame(function(){setTimeout(function(){
    root.setAttribute('data-painted-ms', performance.now().toFixed(1));
  }, 0);});
})();
"""


BEST = ' class="best"'
#: pairs of the per-image table shown at first (and added by each "show more")
PAGE_PAIRS = 50


def _json_num(v: float):
    # JSON has no NaN or infinities: those travel as the strings JavaScript's Number() reads
    v = float(v)
    return v if math.isfinite(v) else "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def _pic(p: Picture) -> list:
    return [p.full, p.thumb, p.width, p.height]


def pairs_data(sec: SectionView) -> dict:
    """The per-image table as data, from which the page's script lays out the rows it shows.

    ``rows``: one ``[name, values, pictures]`` per pair in dataset order; ``values[f][j]`` is
    fusion ``f``'s value of metric ``j``; ``pictures`` is 0 for a pair without pictures, else
    ``{"s": [W, H], "b": [y, x, side], "z": zoom, "v"/"i": visible/infrared, "cv"/"ci": their
    crops, "f"/"m"/"c": per fusion fused, mu (0 when none) and crop}`` where a picture is
    ``[full, thumbnail, thumbnail width, thumbnail height]``; every path is relative to ``base``.
    """
    rows = []
    for name in sec.images:
        vals = [[_json_num(sec.scores[f][name][m]) for m in sec.metrics] for f in sec.fusions]
        sp = sec.shown.get(name)
        pics = 0
        if sp is not None:
            h, w = sp.size
            mu = [sp.mu.get(f) for f in sec.fusions]
            pics = {"s": [w, h], "b": list(sp.box), "z": sp.zoom, "v": _pic(sp.vis), "i": _pic(sp.ir),
                    "cv": sp.crop_vis, "ci": sp.crop_ir, "f": [_pic(sp.fused[f]) for f in sec.fusions],
                    "m": [_pic(m) if m else 0 for m in mu], "c": [sp.crop[f] for f in sec.fusions]}
        rows.append([name, vals, pics])
    return {"fusions": list(sec.fusions), "metrics": list(sec.metrics), "base": sec.base, "page": PAGE_PAIRS,
            "hib": [1 if sec.higher_is_better.get(m, True) else 0 for m in sec.metrics],
            "colours": [series_colour(j) for j in range(len(sec.fusions))], "rows": rows}


def _script_json(obj) -> str:
    # inside <script> only "</" (and "<!--") could end the element early: "<" goes escaped
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def means_table(sec: SectionView) -> str:
    mean = means(sec)
    best = {m: best_of({f: mean[f][m] for f in sec.fusions}, sec.higher_is_better.get(m, True))
            for m in sec.metrics}
    rows = ['<table class="means"><thead><tr><th class="l">fusion</th>'
            + "".join(f'<th title="{"higher" if sec.higher_is_better.get(m, True) else "lower"} is better">'
                      f'{escape(m)} {"↑" if sec.higher_is_better.get(m, True) else "↓"}</th>' for m in sec.metrics)
            + "</tr></thead><tbody>"]
    for i, f in enumerate(sec.fusions):
        cells = "".join(f'<td{BEST if f in best[m] else ""}>{fmt(mean[f][m])}</td>' for m in sec.metrics)
        swatch = f'<span class="sw" style="background:{series_colour(i)}"></span>'
        rows.append(f'<tr><td class="l">{swatch}{escape(f)}</td>{cells}</tr>')
    for k, (label, vals) in enumerate(sec.paper):
        cells = "".join(f"<td>{fmt(vals.get(m))}</td>" for m in sec.metrics)
        rows.append(f'<tr class="paper{" first" if k == 0 else ""}"><td class="l">{escape(label)}</td>{cells}</tr>')
    rows.append("</tbody></table>")
    return "".join(rows)


def distributions(sec: SectionView) -> str:
    out = ['<div class="plots">']
    for m in sec.metrics:
        series = [(f, [sec.scores[f][i][m] for i in sec.images]) for f in sec.fusions]
        out.append(distribution_svg(m, series, sec.higher_is_better.get(m, True)))
    out.append("</div>")
    return "".join(out)


def pairs_table(sec: SectionView) -> str:
    """The per-image table: its header, and the pairs as data for the page's script, which lays
    out the first :data:`PAGE_PAIRS` of them (and more on request, or after a sort). Markup for
    hundreds of pairs takes the browser seconds to parse even when hidden; the data takes
    milliseconds."""
    hib = sec.higher_is_better
    head = ('<thead><tr><th class="l" data-m="image"><button type="button">image</button><span class="arr"></span></th>'
            '<th class="l">visible</th><th class="l">infrared</th><th class="l">zoom: vis / ir</th>'
            '<th class="l">fusion</th><th class="l">mu</th><th class="l">fused</th><th class="l">zoom</th>'
            + "".join(f'<th data-m="{escape(m)}" data-hib="{1 if hib.get(m, True) else 0}">'
                      f'<button type="button">{escape(m)}</button><span class="arr"></span></th>' for m in sec.metrics)
            + "</tr></thead>")
    options = "".join(f'<option value="{j}">{escape(f)}</option>' for j, f in enumerate(sec.fusions))
    bar = (f'<div class="sortbar"><span>Click a column to sort (best first; again to reverse).</span>'
           f'<label>sort by the values of <select class="sortf">{options}</select></label></div>')
    more = (f'<p class="more"><button type="button" class="more">show {PAGE_PAIRS} more</button> '
            f'<span class="count"></span></p>' if len(sec.images) > PAGE_PAIRS else "")
    # the table scrolls inside its own box, so that every metric column stays reachable however
    # many there are (at 1400 px the page cut SSIM and SD off) and the header stays in view
    return (f'<div class="pairwrap">{bar}<div class="tablebox"><table class="pairs" id="pairs-{sec.anchor}">'
            f'{head}</table></div>{more}'
            f'<script type="application/json" id="data-{sec.anchor}">{_script_json(pairs_data(sec))}</script>'
            '<noscript><p class="note">The per-image table needs JavaScript.</p></noscript></div>')


def training_block(history: list, baseline: dict) -> str:
    """The run's per-epoch record, after the evaluation: per test set a table of its per-epoch
    scores (the heuristic guidance's first), and from two epochs on the curves: training loss,
    then every evaluated metric with the heuristic guidance's value as a dashed line."""
    if not history:
        return ""
    sets: list[str] = []
    for r in history:
        for s in r.get("eval", {}) or {}:
            if s not in sets:
                sets.append(s)
    base = (baseline or {}).get("heuristic", {}) if isinstance(baseline, dict) else {}
    n_pairs = {s: len(v) for s, v in (history[-1].get("eval_pairs") or {}).items()}
    out = ['<section id="training"><h2>Training run</h2><p class="note">From the run\'s history: after each '
           'epoch the guidance was scored on a fixed subset of each test set (the pairs history.json names), the '
           'heuristic guidance once on the same pairs. The sections above score the full test sets.</p>']
    names_of = {}
    for s in sets:
        names: list[str] = []
        for r in history:
            for m in (r.get("eval", {}) or {}).get(s, {}):
                if m not in names:
                    names.append(m)
        names_of[s] = names
        rows = ([("heuristic", base[s])] if s in base else []) + [
            (f"epoch {r['epoch']}", (r.get("eval", {}) or {}).get(s, {})) for r in history]
        sub = f" ({n_pairs[s]} pairs)" if s in n_pairs else ""
        out.append(f'<h3>{escape(s)}{escape(sub)}</h3><table class="epochs"><thead><tr><th class="l">guidance</th>'
                   + "".join(f"<th>{escape(m)}</th>" for m in names) + "<th>train loss</th></tr></thead><tbody>")
        loss = {f"epoch {r['epoch']}": r.get("train_loss") for r in history}
        for label, vals in rows:
            out.append(f'<tr><td class="l">{escape(label)}</td>'
                       + "".join(f"<td>{fmt(vals.get(m))}</td>" for m in names)
                       + f"<td>{fmt(loss.get(label))}</td></tr>")
        out.append("</tbody></table>")
    if len(history) >= 2:  # a curve needs two points; one epoch is all in the tables
        out.append('<h3>Per epoch</h3><p class="note">Dashed line: the heuristic guidance.</p><div class="plots">')
        out.append(curve_svg("training loss", [(r["epoch"], float(r.get("train_loss", float("nan")))) for r in history]))
        for s in sets:
            for m in names_of[s]:
                pts = [(r["epoch"], float(r["eval"][s][m])) for r in history if m in (r.get("eval", {}) or {}).get(s, {})]
                refs = [("heuristic", float(base[s][m]))] if m in base.get(s, {}) else []
                out.append(curve_svg(m, pts, refs, subtitle=s))
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


def over_time_block(series: dict, x_label: str = "frame") -> str:
    """``{metric: [(x, value), ...]}`` as one curve per metric (a clip's scores frame by frame)."""
    if not series:
        return ""
    out = ['<section id="over-time"><h2>Over time</h2><p class="note">Each metric frame by frame; a frame '
           'without image metrics (<code>--frame-step</code>) is left out of its curves.</p><div class="plots">']
    for m, pts in series.items():
        out.append(curve_svg(m, pts, x_label=x_label, width=380))
    out.append("</div></section>")
    return "".join(out)


def render(title: str, meta: list[str], sections: list[SectionView], history=None, baseline=None,
           series=None) -> str:
    """The complete page; ``series``: per-frame curves of a clip (:func:`over_time_block`)."""
    nav = "".join(f'<a href="#{s.anchor}">{escape(s.name)}</a>' for s in sections)
    if series:
        nav += '<a href="#over-time">over time</a>'
    if history:
        nav += '<a href="#training">training run</a>'
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>"]
    parts += [f'<p class="meta">{escape(line)}</p>' for line in meta]
    parts.append(f"<nav>{nav}</nav>")
    for s in sections:
        n_shown = len(s.shown)
        parts.append(f'<section id="{s.anchor}"><h2>{escape(s.name)}</h2>')
        parts.append(f'<h3>Mean over {len(s.images)} pair(s)</h3>')
        parts.append(means_table(s))
        notes = ["★ marks the best of our rows per column (↑ higher is better, ↓ lower)."]
        if s.paper:
            notes.append(f"Grey rows: the paper's published means on {s.paper_key} (its full test split; "
                         "— where it reports no value).")
        if s.note:
            notes.append(s.note)
        parts.append(f'<p class="note">{escape(" ".join(notes))}</p>')
        parts.append("<h3>Distribution across images</h3>")
        parts.append('<p class="note">Per metric and fusion: box from first to third quartile, bar at the '
                     'median, whiskers to min and max, diamond at the mean, dots for single images.</p>')
        parts.append(distributions(s))
        parts.append(f'<h3>Per image ({len(s.images)} pairs, pictures for {n_shown})</h3>')
        parts.append('<p class="note">Thumbnails open the full-size image. mu: white = infrared, black = '
                     'visible. Zoom: the square (yellow on the visible thumbnail) where the fusions differ '
                     'most, magnified with nearest-neighbour. Bold: the best fusion for that image.</p>')
        parts.append(pairs_table(s))
        parts.append("</section>")
    if series:
        parts.append(over_time_block(series))
    if history:  # how the run got there comes after what it gives
        parts.append(training_block(history, baseline))
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts)


__all__ = ["Picture", "ShownPair", "SectionView", "render", "over_time_block", "means", "best_of", "fmt"]
